//! `merge`: move misplaced copies to the key's owner inside one group (Elliptics'
//! `dnet_recovery merge`).

use mend_engine::policy::{Action, KeyState, RecoveryPolicy};

use crate::describe;

/// `merge`, for `mend merge`: the replicas are the nodes of one group holding a copy of
/// the key, plus its owner (the one replica with `proper == true`).
///
/// For one key:
/// - Exactly one replica must be the owner; with none or several the key is
///   [`Action::Unrecoverable`] (a route list problem, not something to guess about).
/// - The winner is the newest healthy version among all replicas (DESIGN's order; a
///   corrupt record counts as absent). If the owner does not hold it (nothing, an older
///   version, a corrupt copy), it is copied there from the first replica holding it.
/// - Then every misplaced replica holding a record is removed, keeping the owner:
///   [`Action::Remove`]; the engine removes only after the owner confirmed the copy.
/// - A misplaced corrupt copy whose version is newer than the winner is not removed:
///   the owner will not hold anything at least as new, so removing it would drop the
///   last trace of a newer write (and [`validate`](mend_engine::policy::validate)
///   refuses it). It is left in place and reported as [`Action::Unrecoverable`], next to
///   the copy and the other removals, which still go ahead.
/// - With no healthy replica at all, corrupt copies are reported
///   ([`Action::Unrecoverable`]) and nothing is copied or removed.
///
/// Mergeable keys are not merged here: `merge` moves the newest version, as `dc` with
/// merging turned off would. (Removing a misplaced copy after a merge would need
/// [`validate`](mend_engine::policy::validate) to account for the merged version.)
#[derive(Debug, Clone, Default)]
pub struct MergePolicy {
    // Nothing to configure yet: `--safe` and `--dry-run` are the engine's, applied to
    // whatever any policy decides.
    _private: (),
}

impl MergePolicy {
    /// The policy's name in the [`Registry`](crate::Registry).
    pub const NAME: &'static str = "merge";

    /// The `merge` policy.
    pub fn new() -> Self {
        MergePolicy::default()
    }
}

impl RecoveryPolicy for MergePolicy {
    fn name(&self) -> &str {
        Self::NAME
    }

    fn decide(&self, key: &KeyState) -> Vec<Action> {
        let owners: Vec<usize> = key
            .replicas
            .iter()
            .enumerate()
            .filter(|(_, r)| r.proper)
            .map(|(i, _)| i)
            .collect();
        let owner = match owners.as_slice() {
            [owner] => *owner,
            [] => {
                return vec![Action::Unrecoverable {
                    reason: "no replica is the key's owner in the route list".into(),
                }]
            }
            several => {
                let names: Vec<String> = several
                    .iter()
                    .map(|&i| describe(&key.replicas[i]))
                    .collect();
                return vec![Action::Unrecoverable {
                    reason: format!("several replicas own the key: {}", names.join(", ")),
                }];
            }
        };
        let Some((holder, winner)) = key.newest_healthy() else {
            return crate::no_healthy_copy(key);
        };

        let mut actions = Vec::new();
        if key.replicas[owner].healthy() != Some(winner) {
            actions.push(Action::Copy {
                from: holder,
                to: vec![owner],
            });
        }
        let mut remove = Vec::new();
        let mut left = Vec::new();
        for (i, replica) in key.replicas.iter().enumerate() {
            let Some(record) = replica.record.filter(|_| i != owner) else {
                continue;
            };
            // Only a corrupt record can be newer than the newest healthy version.
            if record.version.is_newer_than(winner) {
                left.push(describe(replica));
            } else {
                remove.push(i);
            }
        }
        if !remove.is_empty() {
            actions.push(Action::Remove {
                on: remove,
                keep: owner,
            });
        }
        if !left.is_empty() {
            actions.push(Action::Unrecoverable {
                reason: format!(
                    "corrupt misplaced copy newer than every healthy version, left in place on {}",
                    left.join(", ")
                ),
            });
        }
        actions
    }
}

#[cfg(test)]
mod tests {
    use mend_engine::policy::{validate, Replica};
    use mend_engine::version::Record;
    use mend_engine::{Id, Version};

    use super::*;

    fn replica(node: &str, proper: bool, version: Option<Version>, corrupt: bool) -> Replica {
        Replica {
            group: 1,
            node: node.into(),
            proper,
            record: version.map(|version| Record { version, corrupt }),
        }
    }

    fn key(replicas: Vec<Replica>) -> KeyState {
        KeyState {
            id: Id::from_key(b"k"),
            replicas,
        }
    }

    #[test]
    fn a_newer_misplaced_copy_moves_to_the_owner_then_is_removed() {
        let old = Version::of_value(b"a", 1, 0);
        let new = Version::of_value(b"b", 2, 0);
        let k = key(vec![
            replica("n1", false, Some(new), false),
            replica("n2", false, Some(old), false),
            replica("owner", true, Some(old), false),
        ]);
        let actions = MergePolicy::new().decide(&k);
        assert_eq!(
            actions,
            vec![
                Action::Copy {
                    from: 0,
                    to: vec![2]
                },
                Action::Remove {
                    on: vec![0, 1],
                    keep: 2
                },
            ]
        );
        validate(&k, &actions).unwrap();
    }

    #[test]
    fn an_older_misplaced_copy_is_only_removed() {
        let k = key(vec![
            replica("owner", true, Some(Version::tombstone(3)), false),
            replica("n1", false, Some(Version::of_value(b"a", 2, 0)), false),
        ]);
        let actions = MergePolicy::new().decide(&k);
        assert_eq!(
            actions,
            vec![Action::Remove {
                on: vec![1],
                keep: 0
            }]
        );
        validate(&k, &actions).unwrap();
    }

    #[test]
    fn the_owner_must_be_unique() {
        let v = Some(Version::of_value(b"a", 1, 0));
        let none = key(vec![
            replica("a", false, v, false),
            replica("b", false, None, false),
        ]);
        let two = key(vec![
            replica("a", true, v, false),
            replica("b", true, None, false),
        ]);
        for k in [none, two] {
            assert!(matches!(
                MergePolicy::new().decide(&k).as_slice(),
                [Action::Unrecoverable { .. }]
            ));
        }
    }

    #[test]
    fn a_newer_corrupt_misplaced_copy_is_reported_not_removed() {
        let k = key(vec![
            replica("n1", false, Some(Version::of_value(b"x", 3, 0)), true),
            replica("n2", false, Some(Version::of_value(b"y", 1, 0)), true),
            replica("owner", true, Some(Version::of_value(b"z", 2, 0)), false),
        ]);
        let actions = MergePolicy::new().decide(&k);
        validate(&k, &actions).unwrap();
        match actions.as_slice() {
            [Action::Remove { on, keep: 2 }, Action::Unrecoverable { reason }] => {
                assert_eq!(on, &[1]);
                assert!(reason.contains("n1 (group 1)"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
    }
}
