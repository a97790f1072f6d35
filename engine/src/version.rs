//! Versions and DESIGN's total order "newest".
//!
//! Laws (tested below and by property tests):
//! - `newest` is a total order: for two different versions exactly one is newer.
//! - larger timestamp wins; at equal timestamp a tombstone wins over live data; then the
//!   larger checksum (bytes compared); then the remaining fields, so that every replica
//!   picks the same winner whatever order it sees versions in.

use std::cmp::Ordering;
use std::fmt;

use bincode::{Decode, Encode};

/// Bit in [`Version::flags`]: this version is a delete.
pub const FLAG_TOMBSTONE: u8 = 1;
/// Bit in [`Version::flags`]: versions of this key are merged, not picked (see policies).
pub const FLAG_MERGEABLE: u8 = 2;

/// The metadata of one stored version of an object.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Encode, Decode)]
pub struct Version {
    /// Nanoseconds since the Unix epoch.
    pub timestamp: u64,
    /// Size of the value in bytes (0 for a tombstone).
    pub size: u64,
    /// BLAKE3 of the value (of the empty value for a tombstone).
    pub checksum: [u8; 32],
    /// Flags the user attached to the object.
    pub user_flags: u64,
    /// [`FLAG_TOMBSTONE`], [`FLAG_MERGEABLE`].
    pub flags: u8,
}

impl Version {
    /// The version of `value` written at `timestamp`.
    pub fn of_value(value: &[u8], timestamp: u64, user_flags: u64) -> Version {
        Version {
            timestamp,
            size: value.len() as u64,
            checksum: *blake3::hash(value).as_bytes(),
            user_flags,
            flags: 0,
        }
    }

    /// A delete at `timestamp`.
    pub fn tombstone(timestamp: u64) -> Version {
        Version {
            timestamp,
            size: 0,
            checksum: *blake3::hash(b"").as_bytes(),
            user_flags: 0,
            flags: FLAG_TOMBSTONE,
        }
    }

    /// Whether this version is a delete.
    pub fn is_tombstone(&self) -> bool {
        self.flags & FLAG_TOMBSTONE != 0
    }

    /// Whether this version asks to be merged with its siblings rather than replace them.
    pub fn is_mergeable(&self) -> bool {
        self.flags & FLAG_MERGEABLE != 0
    }

    /// The checksum as 64 hex characters.
    pub fn checksum_hex(&self) -> String {
        hex::encode(self.checksum)
    }

    /// DESIGN's total order: `Greater` means `self` is newer than `other`.
    pub fn newest_cmp(&self, other: &Version) -> Ordering {
        self.timestamp
            .cmp(&other.timestamp)
            .then(self.is_tombstone().cmp(&other.is_tombstone()))
            .then(self.checksum.cmp(&other.checksum))
            .then(self.size.cmp(&other.size))
            .then(self.user_flags.cmp(&other.user_flags))
            .then(self.flags.cmp(&other.flags))
    }

    /// Whether `self` is strictly newer than `other`.
    pub fn is_newer_than(&self, other: &Version) -> bool {
        self.newest_cmp(other) == Ordering::Greater
    }

    /// A fixed little-endian layout, used for fingerprints and storage (58 bytes).
    pub fn to_bytes(&self) -> [u8; VERSION_BYTES] {
        let mut out = [0u8; VERSION_BYTES];
        out[0..8].copy_from_slice(&self.timestamp.to_le_bytes());
        out[8..16].copy_from_slice(&self.size.to_le_bytes());
        out[16..48].copy_from_slice(&self.checksum);
        out[48..56].copy_from_slice(&self.user_flags.to_le_bytes());
        out[56] = self.flags;
        out
    }

    /// The inverse of [`Version::to_bytes`].
    pub fn from_bytes(b: &[u8; VERSION_BYTES]) -> Version {
        let u64_at = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().expect("8 bytes"));
        Version {
            timestamp: u64_at(0),
            size: u64_at(8),
            checksum: b[16..48].try_into().expect("32 bytes"),
            user_flags: u64_at(48),
            flags: b[56],
        }
    }
}

/// Bytes in [`Version::to_bytes`]'s layout (the last byte is reserved, zero).
pub const VERSION_BYTES: usize = 58;

impl fmt::Debug for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Version({}{} size={} sum={} uf={})",
            if self.is_tombstone() {
                "tombstone@"
            } else {
                "@"
            },
            self.timestamp,
            self.size,
            &self.checksum_hex()[..8],
            self.user_flags
        )
    }
}

/// What a node holds for one id: its version and whether scrub found the value corrupt.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Encode, Decode)]
pub struct Record {
    /// The stored version.
    pub version: Version,
    /// Scrub re-hashed the value and the checksum failed: treat as absent for recovery.
    pub corrupt: bool,
}

/// The state of one id on one replica, as the CLI and `stat --json` name them.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum ReplicaState {
    /// No version at all.
    Absent,
    /// A live value.
    Live,
    /// A delete.
    Tombstone,
    /// A value whose checksum failed.
    Corrupt,
}

impl ReplicaState {
    /// The state of an optional record.
    pub fn of(record: Option<&Record>) -> ReplicaState {
        match record {
            None => ReplicaState::Absent,
            Some(r) if r.corrupt => ReplicaState::Corrupt,
            Some(r) if r.version.is_tombstone() => ReplicaState::Tombstone,
            Some(_) => ReplicaState::Live,
        }
    }

    /// The lowercase name used in output and JSON.
    pub fn as_str(&self) -> &'static str {
        match self {
            ReplicaState::Absent => "absent",
            ReplicaState::Live => "live",
            ReplicaState::Tombstone => "tombstone",
            ReplicaState::Corrupt => "corrupt",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn version() -> impl Strategy<Value = Version> {
        (0u64..4, any::<bool>(), 0u8..3, 0u64..2).prop_map(|(ts, tomb, sum, uf)| {
            let mut v = Version::of_value(&[sum], ts, uf);
            if tomb {
                v = Version::tombstone(ts);
            }
            v
        })
    }

    #[test]
    fn tombstone_wins_at_equal_timestamp() {
        let live = Version::of_value(b"x", 10, 0);
        let dead = Version::tombstone(10);
        assert!(dead.is_newer_than(&live));
        assert!(Version::of_value(b"x", 11, 0).is_newer_than(&dead));
    }

    #[test]
    fn larger_checksum_wins_at_equal_timestamp() {
        let a = Version::of_value(b"a", 10, 0);
        let b = Version::of_value(b"b", 10, 0);
        let (lo, hi) = if a.checksum < b.checksum {
            (a, b)
        } else {
            (b, a)
        };
        assert!(hi.is_newer_than(&lo));
    }

    proptest! {
        #[test]
        fn newest_is_a_total_order(a in version(), b in version(), c in version()) {
            // Antisymmetric and total.
            prop_assert_eq!(a.newest_cmp(&b), b.newest_cmp(&a).reverse());
            prop_assert_eq!(a.newest_cmp(&b) == Ordering::Equal, a == b);
            // Transitive.
            if a.is_newer_than(&b) && b.is_newer_than(&c) {
                prop_assert!(a.is_newer_than(&c));
            }
        }

        #[test]
        fn bytes_round_trip(v in version()) {
            prop_assert_eq!(Version::from_bytes(&v.to_bytes()), v);
        }
    }
}
