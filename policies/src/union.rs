//! Line-set values and `union`, the policy that merges them.

use std::collections::BTreeSet;

use mend_engine::policy::{Action, KeyState, RecoveryPolicy};

use crate::dc::{is_mergeable_key, newest_wins};

/// The union of line-set values: every line of every value, sorted (bytes compared),
/// deduplicated, each followed by `'\n'`.
///
/// A value is read as a set of lines: the runs of bytes between `'\n'`s. Empty lines are
/// not members, and a missing final newline does not matter, so the output reads back as
/// the same set. Bytes are kept as they are (`"a\r\n"` holds the line `"a\r"`).
///
/// Laws (property-tested): the result depends only on the set of lines of the inputs,
/// so `union_lines` is
/// - **commutative**: `union_lines(&[a, b]) == union_lines(&[b, a])`;
/// - **associative**: `union_lines(&[&union_lines(&[a, b]), c]) ==
///   union_lines(&[a, &union_lines(&[b, c])])`, and both equal `union_lines(&[a, b, c])`;
/// - **idempotent**: `union_lines(&[a, a]) == union_lines(&[a])`, and a result is its own
///   union: `union_lines(&[&union_lines(&[a])]) == union_lines(&[a])`.
///
/// ```
/// use mend_policies::union_lines;
/// assert_eq!(union_lines(&[b"b\na\n", b"c\nb"]), b"a\nb\nc\n");
/// assert_eq!(union_lines(&[b"", b"\n\n"]), b"");
/// ```
pub fn union_lines(values: &[&[u8]]) -> Vec<u8> {
    let lines: BTreeSet<&[u8]> = values
        .iter()
        .flat_map(|value| value.split(|&b| b == b'\n'))
        .filter(|line| !line.is_empty())
        .collect();
    let mut out = Vec::with_capacity(lines.iter().map(|l| l.len() + 1).sum());
    for line in lines {
        out.extend_from_slice(line);
        out.push(b'\n');
    }
    out
}

/// `union`: [`DcPolicy`](crate::DcPolicy)'s decisions, always merging mergeable keys
/// (whatever [`DcConfig::merge_mergeable`](crate::DcConfig::merge_mergeable) says), with
/// [`union_lines`] as the merge.
///
/// Meant for keys whose values are sets of lines (indexes, tag lists) written with the
/// mergeable flag: concurrent additions in different groups all survive, and a tombstone
/// newer than them still deletes the key (lines from before the newest tombstone are not
/// merged back).
#[derive(Debug, Clone, Default)]
pub struct UnionPolicy {
    _private: (),
}

impl UnionPolicy {
    /// The policy's name in the [`Registry`](crate::Registry).
    pub const NAME: &'static str = "union";

    /// The `union` policy.
    pub fn new() -> Self {
        UnionPolicy::default()
    }
}

impl RecoveryPolicy for UnionPolicy {
    fn name(&self) -> &str {
        Self::NAME
    }

    fn decide(&self, key: &KeyState) -> Vec<Action> {
        newest_wins(key, true)
    }

    /// The union of the lines of `values` for a mergeable key; `None` otherwise.
    fn merge_values(&self, key: &KeyState, values: &[&[u8]]) -> Option<Vec<u8>> {
        is_mergeable_key(key).then(|| union_lines(values))
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// Values made mostly of a few short lines, so that inputs share lines; any byte may
    /// appear, empty lines and missing final newlines included.
    fn value() -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec(
            prop_oneof![
                3 => Just(b'\n'),
                6 => b'a'..=b'c',
                1 => any::<u8>(),
            ],
            0..24,
        )
    }

    fn lines(value: &[u8]) -> BTreeSet<&[u8]> {
        value
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .collect()
    }

    #[test]
    fn examples() {
        assert_eq!(union_lines(&[]), b"");
        assert_eq!(union_lines(&[b"x"]), b"x\n");
        assert_eq!(union_lines(&[b"b\n\na\nb\n", b"a\r\n"]), b"a\na\r\nb\n");
    }

    proptest! {
        #[test]
        fn commutative(a in value(), b in value()) {
            prop_assert_eq!(union_lines(&[&a, &b]), union_lines(&[&b, &a]));
        }

        #[test]
        fn associative(a in value(), b in value(), c in value()) {
            let left = union_lines(&[&union_lines(&[&a, &b]), &c]);
            let right = union_lines(&[&a, &union_lines(&[&b, &c])]);
            prop_assert_eq!(&left, &right);
            prop_assert_eq!(&left, &union_lines(&[&a, &b, &c]));
        }

        #[test]
        fn idempotent(a in value(), b in value()) {
            let once = union_lines(&[&a, &b]);
            prop_assert_eq!(&union_lines(&[&a, &a]), &union_lines(&[&a]));
            prop_assert_eq!(&union_lines(&[&once]), &once);
            prop_assert_eq!(&union_lines(&[&once, &a]), &once);
        }

        #[test]
        fn is_exactly_the_union_of_the_line_sets(a in value(), b in value()) {
            let merged = union_lines(&[&a, &b]);
            let expected: BTreeSet<&[u8]> = lines(&a).union(&lines(&b)).copied().collect();
            prop_assert_eq!(lines(&merged), expected.clone());
            // Canonical form: sorted, unique, every line newline-terminated.
            let canonical: Vec<u8> = expected.iter().flat_map(|l| l.iter().copied().chain([b'\n'])).collect();
            prop_assert_eq!(merged, canonical);
        }
    }
}
