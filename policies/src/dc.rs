//! `dc`: newest wins across replica groups (Elliptics' built-in `dc_recovery`).

use mend_engine::policy::{Action, KeyState, RecoveryPolicy};
use mend_engine::Version;

use crate::union::union_lines;

/// Configuration of [`DcPolicy`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DcConfig {
    /// Merge the differing live versions of a mergeable key (one whose newest version
    /// carries [`FLAG_MERGEABLE`](mend_engine::version::FLAG_MERGEABLE)) with
    /// [`union_lines`] instead of letting the newest replace the others, as Elliptics
    /// merges index shards. Default: `true`. With `false`, mergeable keys are treated
    /// like any other: newest wins.
    pub merge_mergeable: bool,
}

impl Default for DcConfig {
    fn default() -> Self {
        DcConfig {
            merge_mergeable: true,
        }
    }
}

/// `dc`, the default of `mend dc`: every replica is a full copy (`proper`), and the
/// newest healthy version goes to every replica that lacks it.
///
/// For one key:
/// - The winner is the newest healthy version (DESIGN's total order,
///   [`Version::newest_cmp`]; tombstones included, so deletes propagate; a record marked
///   corrupt counts as absent).
/// - It is copied from the first replica holding it to every replica that holds nothing,
///   an older version, or a corrupt copy of any version: one [`Action::Copy`]. If every
///   replica already holds it, the decision is empty: the key is in sync.
/// - If no replica holds a healthy version but some hold corrupt ones, the key is
///   [`Action::Unrecoverable`] (named, never removed).
/// - Mergeable keys (with [`DcConfig::merge_mergeable`]): if the winner is a live
///   mergeable version and at least two different live mergeable versions newer than the
///   newest healthy tombstone exist, the decision is one [`Action::Merge`] of one replica
///   per such version into every replica. Versions from before a tombstone are left out:
///   they were deleted, and merging them would bring the deleted lines back.
///
/// `dc` never removes; it ignores [`Replica::proper`](mend_engine::policy::Replica::proper).
///
/// The engine stamps a merged version newer than every source (the stores refuse
/// anything else as stale), so once merged, every replica holds the same version and
/// the next decision is empty.
#[derive(Debug, Clone, Default)]
pub struct DcPolicy {
    config: DcConfig,
}

impl DcPolicy {
    /// The policy's name in the [`Registry`](crate::Registry).
    pub const NAME: &'static str = "dc";

    /// A `dc` policy with `config`.
    pub fn new(config: DcConfig) -> Self {
        DcPolicy { config }
    }

    /// The policy's configuration.
    pub fn config(&self) -> &DcConfig {
        &self.config
    }
}

impl RecoveryPolicy for DcPolicy {
    fn name(&self) -> &str {
        Self::NAME
    }

    fn decide(&self, key: &KeyState) -> Vec<Action> {
        newest_wins(key, self.config.merge_mergeable)
    }

    /// The union of the lines of `values` ([`union_lines`]) for a mergeable key; `None`
    /// otherwise, or when merging is turned off.
    fn merge_values(&self, key: &KeyState, values: &[&[u8]]) -> Option<Vec<u8>> {
        (self.config.merge_mergeable && is_mergeable_key(key)).then(|| union_lines(values))
    }
}

/// `dc`'s decision; `merge` says whether mergeable keys are merged.
pub(crate) fn newest_wins(key: &KeyState, merge: bool) -> Vec<Action> {
    let Some((from, winner)) = key.newest_healthy() else {
        return crate::no_healthy_copy(key);
    };
    if merge {
        if let Some(sources) = merge_sources(key, winner) {
            return vec![Action::Merge {
                sources,
                to: (0..key.replicas.len()).collect(),
            }];
        }
    }
    // Equal versions are equal in every field (the order is total), so "holds the
    // winner" is plain equality; absent, older and corrupt copies all differ from it.
    let to: Vec<usize> = key
        .replicas
        .iter()
        .enumerate()
        .filter(|(_, r)| r.healthy() != Some(winner))
        .map(|(i, _)| i)
        .collect();
    if to.is_empty() {
        Vec::new()
    } else {
        vec![Action::Copy { from, to }]
    }
}

/// Whether the key's newest healthy version is a live mergeable one.
pub(crate) fn is_mergeable_key(key: &KeyState) -> bool {
    key.newest_healthy()
        .is_some_and(|(_, v)| v.is_mergeable() && !v.is_tombstone())
}

/// The replicas to merge (one per distinct live mergeable version newer than the newest
/// healthy tombstone, in replica order), or `None` if the key is not to be merged: the
/// winner is not live and mergeable, or fewer than two such versions differ.
fn merge_sources(key: &KeyState, winner: &Version) -> Option<Vec<usize>> {
    if !winner.is_mergeable() || winner.is_tombstone() {
        return None;
    }
    let newest_delete = key
        .replicas
        .iter()
        .filter_map(|r| r.healthy())
        .filter(|v| v.is_tombstone())
        .max_by(|a, b| a.newest_cmp(b));
    let mut seen: Vec<&Version> = Vec::new();
    let mut sources = Vec::new();
    for (i, replica) in key.replicas.iter().enumerate() {
        let Some(v) = replica.healthy() else { continue };
        let wanted = v.is_mergeable()
            && !v.is_tombstone()
            && newest_delete.is_none_or(|t| v.is_newer_than(t))
            && !seen.contains(&v);
        if wanted {
            seen.push(v);
            sources.push(i);
        }
    }
    (sources.len() >= 2).then_some(sources)
}

#[cfg(test)]
mod tests {
    use mend_engine::policy::{validate, Replica};
    use mend_engine::version::{Record, FLAG_MERGEABLE};
    use mend_engine::Id;

    use super::*;

    fn replica(node: &str, version: Option<Version>, corrupt: bool) -> Replica {
        Replica {
            group: 1,
            node: node.into(),
            proper: true,
            record: version.map(|version| Record { version, corrupt }),
        }
    }

    fn key(replicas: Vec<Replica>) -> KeyState {
        KeyState {
            id: Id::from_key(b"k"),
            replicas,
        }
    }

    fn mergeable(value: &[u8], ts: u64) -> Version {
        let mut v = Version::of_value(value, ts, 0);
        v.flags |= FLAG_MERGEABLE;
        v
    }

    fn dc() -> DcPolicy {
        DcPolicy::new(DcConfig::default())
    }

    #[test]
    fn newest_goes_to_missing_and_older_replicas_from_the_first_holder() {
        let old = Version::of_value(b"a", 1, 0);
        let new = Version::of_value(b"b", 2, 0);
        let k = key(vec![
            replica("a", Some(old), false),
            replica("b", Some(new), false),
            replica("c", None, false),
            replica("d", Some(new), false),
        ]);
        let actions = dc().decide(&k);
        assert_eq!(
            actions,
            vec![Action::Copy {
                from: 1,
                to: vec![0, 2]
            }]
        );
        validate(&k, &actions).unwrap();
    }

    #[test]
    fn a_newer_tombstone_is_copied_over_live_data() {
        let k = key(vec![
            replica("a", Some(Version::of_value(b"a", 5, 0)), false),
            replica("b", Some(Version::tombstone(5)), false),
        ]);
        assert_eq!(
            dc().decide(&k),
            vec![Action::Copy {
                from: 1,
                to: vec![0]
            }]
        );
    }

    #[test]
    fn in_sync_and_empty_keys_need_nothing() {
        let v = Version::of_value(b"a", 1, 0);
        let k = key(vec![
            replica("a", Some(v), false),
            replica("b", Some(v), false),
        ]);
        assert!(dc().decide(&k).is_empty());
        let k = key(vec![replica("a", None, false), replica("b", None, false)]);
        assert!(dc().decide(&k).is_empty());
    }

    #[test]
    fn differing_mergeable_versions_are_merged_once_each_into_every_replica() {
        let a = mergeable(b"x\n", 1);
        let b = mergeable(b"y\n", 2);
        let k = key(vec![
            replica("a", Some(a), false),
            replica("b", Some(b), false),
            replica("c", Some(a), false),
            replica("d", None, false),
        ]);
        let actions = dc().decide(&k);
        assert_eq!(
            actions,
            vec![Action::Merge {
                sources: vec![0, 1],
                to: vec![0, 1, 2, 3],
            }]
        );
        validate(&k, &actions).unwrap();
        assert_eq!(
            dc().merge_values(&k, &[b"x\n", b"y\n"]),
            Some(b"x\ny\n".to_vec())
        );
    }

    #[test]
    fn one_mergeable_version_is_copied_not_merged() {
        let a = mergeable(b"x\n", 1);
        let k = key(vec![
            replica("a", Some(a), false),
            replica("b", None, false),
        ]);
        assert_eq!(
            dc().decide(&k),
            vec![Action::Copy {
                from: 0,
                to: vec![1]
            }]
        );
    }

    #[test]
    fn merging_can_be_turned_off() {
        let k = key(vec![
            replica("a", Some(mergeable(b"x\n", 1)), false),
            replica("b", Some(mergeable(b"y\n", 2)), false),
        ]);
        let dc = DcPolicy::new(DcConfig {
            merge_mergeable: false,
        });
        assert_eq!(
            dc.decide(&k),
            vec![Action::Copy {
                from: 1,
                to: vec![0]
            }]
        );
        assert_eq!(dc.merge_values(&k, &[b"x\n"]), None);
    }

    #[test]
    fn a_merge_leaves_out_what_a_tombstone_deleted() {
        // x@1 was deleted at 2; only y@3 survives, so there is nothing to merge.
        let k = key(vec![
            replica("a", Some(mergeable(b"x\n", 1)), false),
            replica("b", Some(Version::tombstone(2)), false),
            replica("c", Some(mergeable(b"y\n", 3)), false),
        ]);
        assert_eq!(
            dc().decide(&k),
            vec![Action::Copy {
                from: 2,
                to: vec![0, 1]
            }]
        );
        // With two survivors, the deleted one is still left out of the merge.
        let k = key(vec![
            replica("a", Some(mergeable(b"x\n", 1)), false),
            replica("b", Some(Version::tombstone(2)), false),
            replica("c", Some(mergeable(b"y\n", 3)), false),
            replica("d", Some(mergeable(b"z\n", 4)), false),
        ]);
        assert_eq!(
            dc().decide(&k),
            vec![Action::Merge {
                sources: vec![2, 3],
                to: vec![0, 1, 2, 3],
            }]
        );
    }

    #[test]
    fn a_newest_tombstone_is_never_merged_away() {
        let k = key(vec![
            replica("a", Some(mergeable(b"x\n", 1)), false),
            replica("b", Some(mergeable(b"y\n", 1)), false),
            replica("c", Some(Version::tombstone(2)), false),
        ]);
        assert_eq!(
            dc().decide(&k),
            vec![Action::Copy {
                from: 2,
                to: vec![0, 1]
            }]
        );
        assert_eq!(dc().merge_values(&k, &[b"x\n", b"y\n"]), None);
    }

    #[test]
    fn corrupt_copies_are_never_merge_sources() {
        let k = key(vec![
            replica("a", Some(mergeable(b"x\n", 3)), true),
            replica("b", Some(mergeable(b"y\n", 2)), false),
            replica("c", None, false),
        ]);
        assert_eq!(
            dc().decide(&k),
            vec![Action::Copy {
                from: 1,
                to: vec![0, 2]
            }]
        );
    }
}
