//! Order-independent, incrementally maintained fingerprints of sets of versions.
//!
//! A fingerprint is the sum modulo 2^256 of BLAKE3(id ‖ version) over the set, plus the
//! number of elements. Laws (property-tested in `store::conformance` and below):
//! - order-independent: the fingerprint of a set does not depend on insertion order;
//! - incremental = rebuilt: adding then removing an element restores the previous value,
//!   so a fingerprint maintained write by write equals one rebuilt from the data;
//! - additive: the fingerprint of a union of disjoint ranges is the sum of theirs.

use bincode::{Decode, Encode};

use crate::id::Id;
use crate::version::{Record, Version};

/// The fingerprint of a set of (id, version) pairs.
///
/// On the wire the sum travels truncated to its first 128 bits (as negentropy's
/// fingerprints are 128 bits): replicas are compared by what they send, so all sides are
/// truncated alike, and a collision stays a 2^-128 chance per comparison.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Fingerprint {
    /// Sum modulo 2^256 of the element hashes, little-endian.
    pub sum: [u8; 32],
    /// Number of elements.
    pub count: u64,
}

impl std::fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Fingerprint({} n={})",
            &hex::encode(self.sum)[..12],
            self.count
        )
    }
}

/// Bytes of the sum sent on the wire.
pub const WIRE_SUM_BYTES: usize = 16;

impl Encode for Fingerprint {
    fn encode<E: bincode::enc::Encoder>(
        &self,
        e: &mut E,
    ) -> Result<(), bincode::error::EncodeError> {
        let head: [u8; WIRE_SUM_BYTES] = self.sum[..WIRE_SUM_BYTES].try_into().expect("16 bytes");
        head.encode(e)?;
        self.count.encode(e)
    }
}

impl<C> Decode<C> for Fingerprint {
    fn decode<D: bincode::de::Decoder<Context = C>>(
        d: &mut D,
    ) -> Result<Self, bincode::error::DecodeError> {
        let head = <[u8; WIRE_SUM_BYTES]>::decode(d)?;
        let mut sum = [0u8; 32];
        sum[..WIRE_SUM_BYTES].copy_from_slice(&head);
        Ok(Fingerprint {
            sum,
            count: u64::decode(d)?,
        })
    }
}

impl<'de, C> bincode::BorrowDecode<'de, C> for Fingerprint {
    fn borrow_decode<D: bincode::de::BorrowDecoder<'de, Context = C>>(
        d: &mut D,
    ) -> Result<Self, bincode::error::DecodeError> {
        Decode::decode(d)
    }
}

/// Bytes in [`Fingerprint::to_bytes`].
pub const FINGERPRINT_BYTES: usize = 40;

impl Fingerprint {
    /// The fingerprint of the empty set.
    pub const EMPTY: Fingerprint = Fingerprint {
        sum: [0; 32],
        count: 0,
    };

    /// The hash one element contributes.
    pub fn element(id: &Id, version: &Version) -> [u8; 32] {
        let mut h = blake3::Hasher::new();
        h.update(&id.0);
        h.update(&version.to_bytes());
        *h.finalize().as_bytes()
    }

    /// The element a stored record contributes. A record marked corrupt contributes a
    /// different element than the same version healthy, so a corrupt copy differs both from
    /// a healthy copy and from no copy at all.
    pub fn record_element(id: &Id, record: &Record) -> [u8; 32] {
        if !record.corrupt {
            return Self::element(id, &record.version);
        }
        let mut h = blake3::Hasher::new();
        h.update(&id.0);
        h.update(&record.version.to_bytes());
        h.update(b"corrupt");
        *h.finalize().as_bytes()
    }

    /// Adds a stored record.
    pub fn insert_record(&mut self, id: &Id, record: &Record) {
        self.add(&Fingerprint {
            sum: Self::record_element(id, record),
            count: 1,
        });
    }

    /// Removes a stored record previously added.
    pub fn remove_record(&mut self, id: &Id, record: &Record) {
        self.subtract(&Self::record_element(id, record));
    }

    /// Adds one element.
    pub fn insert(&mut self, id: &Id, version: &Version) {
        self.add(&Fingerprint {
            sum: Self::element(id, version),
            count: 1,
        });
    }

    /// Removes one element previously inserted.
    pub fn remove(&mut self, id: &Id, version: &Version) {
        self.subtract(&Self::element(id, version));
    }

    fn subtract(&mut self, element: &[u8; 32]) {
        sub_sum(&mut self.sum, element);
        self.count = self.count.wrapping_sub(1);
    }

    /// What a fingerprint received on the wire leaves once `parts` (disjoint subsets of
    /// its set, also as received) are taken out: the fingerprint of the rest, as the wire
    /// would carry it. Sums are truncated alike on the wire and additive modulo 2^128, so
    /// this equals the rest's own fingerprint; a count that would go below zero (the set
    /// changed between the two answers) stops at zero.
    pub fn less(&self, parts: &[Fingerprint]) -> Fingerprint {
        let mut rest = *self;
        for p in parts {
            sub_sum(&mut rest.sum, &p.sum);
            rest.count = rest.count.saturating_sub(p.count);
        }
        rest.sum[WIRE_SUM_BYTES..].fill(0);
        rest
    }

    /// Adds another fingerprint (union of disjoint sets).
    pub fn add(&mut self, other: &Fingerprint) {
        let mut carry = 0u16;
        for (a, b) in self.sum.iter_mut().zip(other.sum.iter()) {
            let s = u16::from(*a) + u16::from(*b) + carry;
            *a = s as u8;
            carry = s >> 8;
        }
        self.count = self.count.wrapping_add(other.count);
    }

    /// A fixed layout for storage: the sum then the count, little-endian.
    pub fn to_bytes(&self) -> [u8; FINGERPRINT_BYTES] {
        let mut out = [0u8; FINGERPRINT_BYTES];
        out[..32].copy_from_slice(&self.sum);
        out[32..].copy_from_slice(&self.count.to_le_bytes());
        out
    }

    /// The inverse of [`Fingerprint::to_bytes`].
    pub fn from_bytes(b: &[u8; FINGERPRINT_BYTES]) -> Fingerprint {
        Fingerprint {
            sum: b[..32].try_into().expect("32 bytes"),
            count: u64::from_le_bytes(b[32..].try_into().expect("8 bytes")),
        }
    }

    /// The fingerprint of a set given in any order.
    pub fn of<'a>(items: impl IntoIterator<Item = (&'a Id, &'a Version)>) -> Fingerprint {
        let mut fp = Fingerprint::EMPTY;
        for (id, v) in items {
            fp.insert(id, v);
        }
        fp
    }
}

/// `sum -= other`, as 256-bit little-endian numbers.
fn sub_sum(sum: &mut [u8; 32], other: &[u8; 32]) {
    let mut borrow = 0i32;
    for (a, b) in sum.iter_mut().zip(other.iter()) {
        let d = i32::from(*a) - i32::from(*b) - borrow;
        borrow = i32::from(d < 0);
        *a = d.rem_euclid(256) as u8;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn order_independent_and_removable(keys in proptest::collection::vec(any::<u16>(), 0..40)) {
            let items: Vec<(Id, Version)> = keys.iter().map(|k| {
                (Id::from_key(&k.to_le_bytes()), Version::of_value(&k.to_be_bytes(), u64::from(*k), 0))
            }).collect();
            let forward = Fingerprint::of(items.iter().map(|(i, v)| (i, v)));
            let backward = Fingerprint::of(items.iter().rev().map(|(i, v)| (i, v)));
            prop_assert_eq!(forward, backward);
            let mut fp = forward;
            for (i, v) in &items {
                fp.remove(i, v);
            }
            prop_assert_eq!(fp, Fingerprint::EMPTY);
        }

        #[test]
        fn additive_over_disjoint_sets(a in 0u16..500, b in 0u16..500) {
            let ia = Id::from_key(&a.to_le_bytes());
            let ib = Id::from_key(&(b + 1000).to_le_bytes());
            let va = Version::tombstone(u64::from(a));
            let vb = Version::tombstone(u64::from(b));
            let mut sum = Fingerprint::of([(&ia, &va)]);
            sum.add(&Fingerprint::of([(&ib, &vb)]));
            prop_assert_eq!(sum, Fingerprint::of([(&ib, &vb), (&ia, &va)]));
        }

        #[test]
        fn the_rest_of_a_set_follows_from_the_wire_fingerprints_of_its_parts(
            keys in proptest::collection::vec((any::<u32>(), 0usize..4), 0..60),
        ) {
            let wire = |fp: &Fingerprint| -> Fingerprint {
                let cfg = bincode::config::standard();
                let bytes = bincode::encode_to_vec(fp, cfg).unwrap();
                bincode::decode_from_slice(&bytes, cfg).unwrap().0
            };
            let mut whole = Fingerprint::EMPTY;
            let mut parts = [Fingerprint::EMPTY; 4];
            for (k, part) in &keys {
                let (id, v) = (Id::from_key(&k.to_le_bytes()), Version::tombstone(u64::from(*k)));
                whole.insert(&id, &v);
                parts[*part].insert(&id, &v);
            }
            let sent: Vec<Fingerprint> = parts[..3].iter().map(wire).collect();
            prop_assert_eq!(wire(&whole).less(&sent), wire(&parts[3]));
        }
    }
}
